"""Sequelize compatibility: config and `.sequelizerc` loading, and the node bridge."""
