"""Delivery workers: recall intents from the Redis Streams queue to SMTP / signed webhooks."""
