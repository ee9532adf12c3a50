"""Responsible generation: watermarks (text, images) and their detection, provenance (C2PA
content credentials), memorization audits and the quality gate.

Layer: above generate/ and evaluate/, below studio/ and serve/ (see docs/architecture.md)."""
