"""The HTTP API (FastAPI): routers, schemas and error mapping. Thin: it calls `service/`."""
