"""The explanation-review study: a durable ratings store (SQLite) and agreement statistics."""
