"""Real celery worker fixtures."""
