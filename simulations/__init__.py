"""blazemesh simulations."""
