"""`mailfilter web`: the quarantine console for admins and the public release pages of digest links.

An ASGI application (Starlette) served by uvicorn (serve.py). Modules, one idea each:
secret (the key file), users (argon2id accounts), sessions (server-side sessions,
CSRF tokens, login rate limit), links (signed release links and their one use),
audit (who did what), render (a held message as safe display data), app (routes).
"""
