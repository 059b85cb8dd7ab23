# Root account (depth 0) plus three levels of subaccounts.
MAX_ACCOUNT_DEPTH = 3
TOKEN_KEY_BYTES = 48  # 64 characters of URL-safe base64
TOKEN_PREFIX_LENGTH = 8
# ``last_used`` is written at most this often per token (seconds), and more often when the
# token's ttl is short, so that authentication is not a write on every request.
TOKEN_TOUCH_INTERVAL = 10.0
