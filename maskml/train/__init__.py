"""Training: one engine (engine.Trainer) that runs every recipe (recipes/), alone or under torchrun."""
