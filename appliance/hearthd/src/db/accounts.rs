//! People, sessions and API tokens. Secrets never reach this module in the clear except
//! password hashes (argon2 PHC strings); sessions and tokens are looked up by their SHA-256.

use rusqlite::{OptionalExtension, Row, params};

use super::Db;
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Member => "member",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "owner" {
            Self::Owner
        } else {
            Self::Member
        }
    }
}

/// A person as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
}

/// A person with what only the server sees.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub user: User,
    pub password_hash: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub user: User,
    pub csrf: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// What creating a user can run into besides the disk.
#[derive(Debug)]
pub enum Created<T> {
    Done(T),
    /// The name is taken, or (for the owner) an owner already exists.
    Conflict,
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        user: User {
            id: r.get(0)?,
            name: r.get(1)?,
            role: Role::parse(&r.get::<_, String>(2)?),
        },
        password_hash: r.get(3)?,
        created_at: r.get(4)?,
    })
}

const USER_COLUMNS: &str = "id, name, role, password_hash, created_at";

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Db {
    pub fn owner_exists(&self) -> Result<bool, Error> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'owner')",
                [],
                |r| r.get(0),
            )
        })
    }

    /// Adds a person. The database decides races: a second owner, or a name that differs
    /// only in case, is a [`Created::Conflict`].
    pub fn create_user(
        &self,
        name: &str,
        role: Role,
        password_hash: &str,
    ) -> Result<Created<User>, Error> {
        self.with(|c| {
            match c.execute(
                "INSERT INTO users (name, role, password_hash) VALUES (?1, ?2, ?3)",
                params![name, role.as_str(), password_hash],
            ) {
                Ok(_) => Ok(Created::Done(User {
                    id: c.last_insert_rowid(),
                    name: name.to_owned(),
                    role,
                })),
                Err(e) if is_constraint(&e) => Ok(Created::Conflict),
                Err(e) => Err(e),
            }
        })
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRow>, Error> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"),
                [name],
                user_row,
            )
            .optional()
        })
    }

    pub fn user_by_id(&self, id: i64) -> Result<Option<UserRow>, Error> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [id],
                user_row,
            )
            .optional()
        })
    }

    pub fn users(&self) -> Result<Vec<UserRow>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))?;
            stmt.query_map([], user_row)?.collect()
        })
    }

    /// Deletes a member (never the owner) and, by cascade, their sessions, tokens and
    /// conversations. False when there was no such member.
    pub fn delete_member(&self, id: i64) -> Result<bool, Error> {
        self.with(|c| {
            c.execute("DELETE FROM users WHERE id = ?1 AND role = 'member'", [id])
                .map(|n| n > 0)
        })
    }

    /// Sets a new password hash and ends every session of that person, in one transaction.
    pub fn set_password(&self, user_id: i64, password_hash: &str) -> Result<bool, Error> {
        self.transaction(|tx| {
            let n = tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![user_id, password_hash],
            )?;
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?;
            Ok(n > 0)
        })
    }

    pub fn create_session(
        &self,
        id_hash: &str,
        user_id: i64,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (id_hash, user_id, csrf, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![id_hash, user_id, csrf, expires_at],
            )
            .map(|_| ())
        })
    }

    /// The live session with this hash, if any; expired ones are removed on the way.
    pub fn session(&self, id_hash: &str, now: i64) -> Result<Option<SessionRow>, Error> {
        self.with(|c| {
            c.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
            c.query_row(
                "SELECT u.id, u.name, u.role, s.csrf, s.expires_at
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?1",
                [id_hash],
                |r| {
                    Ok(SessionRow {
                        user: User {
                            id: r.get(0)?,
                            name: r.get(1)?,
                            role: Role::parse(&r.get::<_, String>(2)?),
                        },
                        csrf: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Slides a session's expiry forward.
    pub fn touch_session(&self, id_hash: &str, now: i64, expires_at: i64) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "UPDATE sessions SET last_seen_at = ?2, expires_at = ?3 WHERE id_hash = ?1",
                params![id_hash, now, expires_at],
            )
            .map(|_| ())
        })
    }

    pub fn delete_session(&self, id_hash: &str) -> Result<(), Error> {
        self.with(|c| {
            c.execute("DELETE FROM sessions WHERE id_hash = ?1", [id_hash])
                .map(|_| ())
        })
    }

    /// Ends every session of a person but the one given (after a password change).
    pub fn delete_other_sessions(&self, user_id: i64, keep_hash: &str) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "DELETE FROM sessions WHERE user_id = ?1 AND id_hash != ?2",
                params![user_id, keep_hash],
            )
            .map(|_| ())
        })
    }

    pub fn create_token(
        &self,
        user_id: i64,
        name: &str,
        token_hash: &str,
    ) -> Result<TokenRow, Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO api_tokens (user_id, name, token_hash) VALUES (?1, ?2, ?3)",
                params![user_id, name, token_hash],
            )?;
            let id = c.last_insert_rowid();
            c.query_row(
                "SELECT id, name, created_at, last_used_at FROM api_tokens WHERE id = ?1",
                [id],
                token_row,
            )
        })
    }

    pub fn tokens(&self, user_id: i64) -> Result<Vec<TokenRow>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, created_at, last_used_at FROM api_tokens
                 WHERE user_id = ?1 ORDER BY id",
            )?;
            stmt.query_map([user_id], token_row)?.collect()
        })
    }

    pub fn delete_token(&self, user_id: i64, id: i64) -> Result<bool, Error> {
        self.with(|c| {
            c.execute(
                "DELETE FROM api_tokens WHERE id = ?1 AND user_id = ?2",
                [id, user_id],
            )
            .map(|n| n > 0)
        })
    }

    /// The person a token hash belongs to, with the stored hash for a constant-time check;
    /// records the use.
    pub fn token_user(&self, token_hash: &str, now: i64) -> Result<Option<(User, String)>, Error> {
        self.with(|c| {
            let found = c
                .query_row(
                    "SELECT u.id, u.name, u.role, t.token_hash, t.id
                     FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?1",
                    [token_hash],
                    |r| {
                        Ok((
                            User {
                                id: r.get(0)?,
                                name: r.get(1)?,
                                role: Role::parse(&r.get::<_, String>(2)?),
                            },
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .optional()?;
            Ok(match found {
                Some((user, hash, id)) => {
                    c.execute(
                        "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                        [id, now],
                    )?;
                    Some((user, hash))
                }
                None => None,
            })
        })
    }
}

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        last_used_at: r.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("hearth.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn only_one_owner_can_ever_be_created() {
        let (_dir, db) = db();
        assert!(!db.owner_exists().unwrap());
        assert!(matches!(
            db.create_user("ana", Role::Owner, "h").unwrap(),
            Created::Done(_)
        ));
        assert!(matches!(
            db.create_user("bob", Role::Owner, "h").unwrap(),
            Created::Conflict
        ));
        assert!(matches!(
            db.create_user("ANA", Role::Member, "h").unwrap(),
            Created::Conflict
        ));
        assert!(db.owner_exists().unwrap());
    }

    #[test]
    fn racing_owner_creation_has_exactly_one_winner() {
        let (dir, _db) = db();
        let path = dir.path().join("hearth.db");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Separate connections, as separate processes (the admin CLI) would have.
                    let db = Db::open(&path).unwrap();
                    matches!(
                        db.create_user(&format!("owner{i}"), Role::Owner, "h")
                            .unwrap(),
                        Created::Done(_)
                    )
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .filter(|_| true)
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(winners, 1);
    }

    #[test]
    fn deleting_a_member_removes_their_sessions_and_tokens_but_the_owner_stays() {
        let (_dir, db) = db();
        let Created::Done(owner) = db.create_user("ana", Role::Owner, "h").unwrap() else {
            panic!()
        };
        let Created::Done(bob) = db.create_user("bob", Role::Member, "h").unwrap() else {
            panic!()
        };
        db.create_session("s1", bob.id, "c", i64::MAX).unwrap();
        db.create_token(bob.id, "t", "th").unwrap();
        assert!(!db.delete_member(owner.id).unwrap());
        assert!(db.delete_member(bob.id).unwrap());
        assert!(db.session("s1", 0).unwrap().is_none());
        assert!(db.token_user("th", 0).unwrap().is_none());
        assert!(db.user_by_id(owner.id).unwrap().is_some());
    }

    #[test]
    fn expired_sessions_are_not_returned() {
        let (_dir, db) = db();
        let Created::Done(ana) = db.create_user("ana", Role::Owner, "h").unwrap() else {
            panic!()
        };
        db.create_session("old", ana.id, "c", 100).unwrap();
        db.create_session("new", ana.id, "c", 1000).unwrap();
        assert!(db.session("old", 500).unwrap().is_none());
        assert_eq!(db.session("new", 500).unwrap().unwrap().user, ana);
        db.set_password(ana.id, "h2").unwrap();
        assert!(
            db.session("new", 500).unwrap().is_none(),
            "a new password ends sessions"
        );
    }
}
