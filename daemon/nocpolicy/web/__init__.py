"""HTTP listeners on aiohttp: one :class:`~.listener.Listener` per address, each serving one
aiohttp ``web.Application`` (metrics, admin API; a customer page with Jinja2 later)."""
