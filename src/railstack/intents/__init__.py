"""The intents rail: a message close to the examples of a Colang user intent the config refuses
is refused with the bot message that the config's flow answers that intent with."""
