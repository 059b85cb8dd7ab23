"""Development tooling: embedded services, the development supervisor, vendoring. Imports no app."""
