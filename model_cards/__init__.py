"""Model card templates of ERA adapters, shipped inside the wheel as `era_adapters.model_cards`."""
