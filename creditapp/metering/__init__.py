"""Metering: provider adapters, normalized usage, token estimates.

Imports no other domain module.
"""
