"""The bot's features, one cog each, loaded by name (`bot.client.EXTENSIONS`)."""
