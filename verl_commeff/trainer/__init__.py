"""The plugin's trainer: verl's v1 sync trainer with the comm-eff actor and the anchor group."""
