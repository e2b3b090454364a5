"""Jinja model-card templates, installed as the `hf_starsse.model_cards` resource package (see setup.py)."""
