"""Model providers, one module per kind, all behind `providers.base.Provider`."""
