"""The content studio: a prompt becomes an article, an illustration and a narration (pipeline.py),
served with an OpenAI-compatible API, a web page and a job history (server.py, history.py)."""
