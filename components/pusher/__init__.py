"""TFX's Pusher, with an atomic and idempotent push (see component.py)."""
