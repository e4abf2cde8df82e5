"""Ray entry points: they put clare_dist functions onto Ray and decide nothing about the method."""
