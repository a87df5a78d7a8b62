"""The HTTP shim: the upstream API (`/acquire`, `/show-pools`, ...) over the Celery tasks."""
