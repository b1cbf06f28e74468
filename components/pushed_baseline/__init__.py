"""LatestPushedModel: the Evaluator's baseline as the newest pushed model."""
