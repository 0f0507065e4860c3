"""``edgeslm plan``: what a configuration of a model will take on this machine, before it loads."""
