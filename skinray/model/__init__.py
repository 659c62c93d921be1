"""The network, the model directory that carries it (``skinray.json``), and what reads its features."""
