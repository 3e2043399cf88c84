"""Parameter-efficient methods. Each module offers attach(model, cfg, targets) -> wrapped model."""
