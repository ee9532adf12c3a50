"""Runtimes: every way genlab runs a language model, behind one ``Runner`` call and one
``open_lm(path)`` (see base.py and registry.py)."""
