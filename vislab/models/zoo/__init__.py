"""Registry entries of each model family, collected by ``vislab.models.registry``."""
