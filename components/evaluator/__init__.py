"""TFX's Evaluator, with the stand-in baseline left out (see component.py)."""
