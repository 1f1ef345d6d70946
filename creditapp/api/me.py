"""The caller's own user record."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from creditapp.api.identity import authenticated, caller
from creditapp.api.parsing import Blueprint
from creditapp.api.schemas import Id, UtcDateTime

blp = Blueprint("me", __name__, url_prefix="/api", description="The signed-in user")


class UserSchema(Schema):
    id = Id()
    email = fields.String()
    role = fields.String()
    tier = fields.String(attribute="tier_name")
    created_at = UtcDateTime()


@blp.route("/me", methods=["GET"])
@authenticated()
@blp.response(200, UserSchema)
def me() -> Any:
    return caller()
