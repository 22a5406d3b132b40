"""The seller's dashboard: static files (``static/``) served by ``api/routes/dashboard.py``.

No build step: ``index.html``, ``dashboard.css`` and two ES modules, ``charts.js``
(small SVG chart helpers) and ``dashboard.js`` (key, polling, sections).
"""
