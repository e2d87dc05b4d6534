"""Stage 2: recommendation prompt tuning."""
