"""molal_ray."""
