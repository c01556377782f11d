"""privfed on Flower: a ServerApp and a ClientApp driven by one privfed config (see ``apps.py``), the node's side
(``node.py``), the server's reach to the nodes (``clients.py``), their messages (``wire.py``), and the tools to run
them on one machine (``app_folder.py``, ``certificates.py``, ``loopback.py``). Importing this package imports no
flwr; its modules do."""
