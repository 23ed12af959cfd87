"""icrl shared machinery: data, rollout, nn blocks, trainer, CLI and logging. Knows no agent or env."""
