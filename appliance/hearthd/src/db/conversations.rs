//! Conversations and their messages. Every query takes the owner's user id, so one person can
//! never read or change another's conversation: a foreign id simply is not found.

use rusqlite::{OptionalExtension, Row, params};

use super::Db;
use crate::Error;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Conversation {
    pub id: i64,
    pub title: String,
    pub model: String,
    pub system_prompt: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    pub id: i64,
    pub role: String,
    pub content: String,
    pub stopped: bool,
    /// JSON text as stored; the API layer parses it.
    #[serde(skip)]
    pub timings: Option<String>,
    pub created_at: i64,
}

/// Fields a PATCH may change; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct ConversationPatch {
    pub title: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
}

const CONVERSATION_COLUMNS: &str = "id, title, model, system_prompt, created_at, updated_at";

fn conversation_row(r: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: r.get(0)?,
        title: r.get(1)?,
        model: r.get(2)?,
        system_prompt: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

fn message_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: r.get(0)?,
        role: r.get(1)?,
        content: r.get(2)?,
        stopped: r.get(3)?,
        timings: r.get(4)?,
        created_at: r.get(5)?,
    })
}

/// LIKE treats `%` and `_` as wildcards; a search for them means the characters.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

impl Db {
    pub fn conversations(
        &self,
        user_id: i64,
        search: Option<&str>,
    ) -> Result<Vec<Conversation>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations
                 WHERE user_id = ?1 AND title LIKE ?2 ESCAPE '\\'
                 ORDER BY updated_at DESC, id DESC LIMIT 500"
            ))?;
            let pattern = like_pattern(search.unwrap_or(""));
            stmt.query_map(params![user_id, pattern], conversation_row)?
                .collect()
        })
    }

    pub fn create_conversation(
        &self,
        user_id: i64,
        title: &str,
        model: &str,
        system_prompt: &str,
    ) -> Result<Conversation, Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO conversations (user_id, title, model, system_prompt)
                 VALUES (?1, ?2, ?3, ?4)",
                params![user_id, title, model, system_prompt],
            )?;
            let id = c.last_insert_rowid();
            c.query_row(
                &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"),
                [id],
                conversation_row,
            )
        })
    }

    pub fn conversation(&self, user_id: i64, id: i64) -> Result<Option<Conversation>, Error> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1 AND user_id = ?2"
                ),
                [id, user_id],
                conversation_row,
            )
            .optional()
        })
    }

    pub fn update_conversation(
        &self,
        user_id: i64,
        id: i64,
        patch: &ConversationPatch,
    ) -> Result<Option<Conversation>, Error> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE conversations SET
                    title = coalesce(?3, title),
                    model = coalesce(?4, model),
                    system_prompt = coalesce(?5, system_prompt),
                    updated_at = unixepoch()
                 WHERE id = ?1 AND user_id = ?2",
                params![id, user_id, patch.title, patch.model, patch.system_prompt],
            )?;
            if n == 0 {
                return Ok(None);
            }
            c.query_row(
                &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"),
                [id],
                conversation_row,
            )
            .optional()
        })
    }

    pub fn delete_conversation(&self, user_id: i64, id: i64) -> Result<bool, Error> {
        self.with(|c| {
            c.execute(
                "DELETE FROM conversations WHERE id = ?1 AND user_id = ?2",
                [id, user_id],
            )
            .map(|n| n > 0)
        })
    }

    /// The messages of a conversation, oldest first; `None` when it is not this person's.
    pub fn messages(
        &self,
        user_id: i64,
        conversation_id: i64,
    ) -> Result<Option<Vec<Message>>, Error> {
        self.with(|c| {
            let owned: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = ?1 AND user_id = ?2)",
                [conversation_id, user_id],
                |r| r.get(0),
            )?;
            if !owned {
                return Ok(None);
            }
            let mut stmt = c.prepare(
                "SELECT id, role, content, stopped, timings, created_at FROM messages
                 WHERE conversation_id = ?1 ORDER BY id",
            )?;
            stmt.query_map([conversation_id], message_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(Some)
        })
    }

    /// Appends a message and bumps the conversation; names it after the first user message
    /// when it has no title yet. The caller has checked ownership.
    pub fn add_message(
        &self,
        conversation_id: i64,
        role: &str,
        content: &str,
        stopped: bool,
        timings: Option<&str>,
    ) -> Result<Message, Error> {
        self.transaction(|tx| {
            tx.execute(
                "INSERT INTO messages (conversation_id, role, content, stopped, timings)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![conversation_id, role, content, stopped, timings],
            )?;
            let id = tx.last_insert_rowid();
            if role == "user" {
                let title: String = content.split_whitespace().collect::<Vec<_>>().join(" ");
                let title: String = title.chars().take(60).collect();
                tx.execute(
                    "UPDATE conversations SET title = ?2 WHERE id = ?1 AND title = ''",
                    params![conversation_id, title],
                )?;
            }
            tx.execute(
                "UPDATE conversations SET updated_at = unixepoch() WHERE id = ?1",
                [conversation_id],
            )?;
            tx.query_row(
                "SELECT id, role, content, stopped, timings, created_at FROM messages WHERE id = ?1",
                [id],
                message_row,
            )
        })
    }

    /// Removes the last message when it is the assistant's (regenerate). True when removed.
    pub fn delete_last_assistant_message(&self, conversation_id: i64) -> Result<bool, Error> {
        self.with(|c| {
            c.execute(
                "DELETE FROM messages WHERE id = (
                    SELECT id FROM messages WHERE conversation_id = ?1 ORDER BY id DESC LIMIT 1
                 ) AND role = 'assistant'",
                [conversation_id],
            )
            .map(|n| n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Created, Role};

    #[test]
    fn a_person_cannot_see_or_change_another_persons_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("hearth.db")).unwrap();
        let Created::Done(a) = db.create_user("a", Role::Owner, "h").unwrap() else {
            panic!()
        };
        let Created::Done(b) = db.create_user("b", Role::Member, "h").unwrap() else {
            panic!()
        };
        let conv = db.create_conversation(a.id, "", "m", "").unwrap();
        db.add_message(conv.id, "user", "  hello   there  ", false, None)
            .unwrap();
        assert_eq!(
            db.conversation(a.id, conv.id).unwrap().unwrap().title,
            "hello there"
        );
        assert!(db.conversation(b.id, conv.id).unwrap().is_none());
        assert!(db.messages(b.id, conv.id).unwrap().is_none());
        assert!(!db.delete_conversation(b.id, conv.id).unwrap());
        let patch = ConversationPatch {
            title: Some("x".into()),
            ..Default::default()
        };
        assert!(
            db.update_conversation(b.id, conv.id, &patch)
                .unwrap()
                .is_none()
        );
        assert_eq!(db.messages(a.id, conv.id).unwrap().unwrap().len(), 1);
    }

    #[test]
    fn search_matches_titles_literally() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("hearth.db")).unwrap();
        let Created::Done(a) = db.create_user("a", Role::Owner, "h").unwrap() else {
            panic!()
        };
        db.create_conversation(a.id, "dog vaccines", "", "")
            .unwrap();
        db.create_conversation(a.id, "100% sure", "", "").unwrap();
        assert_eq!(db.conversations(a.id, Some("VACC")).unwrap().len(), 1);
        assert_eq!(db.conversations(a.id, Some("%")).unwrap().len(), 1);
        assert_eq!(db.conversations(a.id, None).unwrap().len(), 2);
    }

    #[test]
    fn regenerate_removes_only_a_trailing_assistant_message() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("hearth.db")).unwrap();
        let Created::Done(a) = db.create_user("a", Role::Owner, "h").unwrap() else {
            panic!()
        };
        let conv = db.create_conversation(a.id, "", "", "").unwrap();
        db.add_message(conv.id, "user", "q", false, None).unwrap();
        assert!(!db.delete_last_assistant_message(conv.id).unwrap());
        db.add_message(conv.id, "assistant", "a", true, None)
            .unwrap();
        assert!(db.delete_last_assistant_message(conv.id).unwrap());
        assert_eq!(db.messages(a.id, conv.id).unwrap().unwrap().len(), 1);
    }
}
