"""The peer benchmark: streamguard next to the other Python Kafka frameworks.

``benchmarks/peers.py`` is the command. This package holds its parts: the data set
(``dataset``; the event model and its shape without streamguard, ``events``), what a
contender measures in its own process (``probe``), the contender registry
(``registry``), the client settings every row shares (``kafka``), the contenders
themselves (``baselines``, ``guarded``, ``frameworks``), the runner (``runner``) and the
page and chart (``render``).
"""
