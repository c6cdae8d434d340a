-- The guestbook's queries (aiosql's format: a name, its parameters, a suffix).
-- site.ini grants them to the guestbook service: queries = add_message recent_messages

-- name: add_message(text, created)!
-- Store one message; returns the number of rows added.
INSERT INTO messages (text, created) VALUES (:text, :created);

-- name: recent_messages(limit)
-- The latest messages, newest first.
SELECT id, text, created FROM messages ORDER BY id DESC LIMIT :limit;

-- name: count_messages()$
SELECT count(*) FROM messages;
