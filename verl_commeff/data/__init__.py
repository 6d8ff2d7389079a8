"""Data preparation in verl's layouts."""
