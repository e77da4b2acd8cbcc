"""Model providers, one module per kind, all behind `core.provider.Provider`."""
