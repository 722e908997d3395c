"""The RobustMDiff model: encoders → knowledge-enhanced fusion → latent diffusion → classifier."""
