"""Ship a trained model: one module per target behind one interface (common.Exporter), listed in
registry.TARGETS. Each export reports the parity checks it ran and what it could not check here."""
