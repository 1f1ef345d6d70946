"""Pricing: the price book (rows by provider, model and effective time) and the cost of a call."""
