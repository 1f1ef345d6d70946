"""Users, tiers and subscription periods."""
