"""The workbench server behind ``deepscope serve``: thin FastAPI routes over library calls (see
docs/workbench-api.md for the HTTP contract). ``deepscope.app.server.app.create_app`` builds the application."""
