"""migrunner: a PostgreSQL migration runner and lock service compatible with sequelize-cli."""

__version__ = "0.1.0"
