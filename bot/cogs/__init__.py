"""The slash-command cogs, and the Deliveries cog that posts results; `bot.client` adds them."""
