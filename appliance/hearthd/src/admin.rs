//! Headless provisioning for scripts and tests: create the owner, create an API token. Works
//! on a stopped box and on a running one (SQLite in WAL mode lets both write safely).

use std::path::Path;

use crate::accounts;
use crate::db::{Created, Db, Role};

/// Errors of the admin commands; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("this box already has an owner")]
    OwnerExists,
    #[error("there is no person called '{0}' on this box")]
    NoSuchUser(String),
    #[error(transparent)]
    Daemon(#[from] crate::Error),
    #[error(transparent)]
    Account(#[from] accounts::AccountError),
}

fn open(data_dir: &Path) -> Result<Db, AdminError> {
    std::fs::create_dir_all(data_dir).map_err(|source| crate::Error::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    Ok(Db::open(&data_dir.join("hearth.db"))?)
}

/// Creates the owner account; refuses when one exists.
pub fn create_owner(data_dir: &Path, name: &str, password: &str) -> Result<(), AdminError> {
    accounts::valid_name(name).map_err(AdminError::Invalid)?;
    accounts::valid_password(password).map_err(AdminError::Invalid)?;
    let db = open(data_dir)?;
    let hash = accounts::hash_password(password)?;
    match db.create_user(name, Role::Owner, &hash)? {
        Created::Done(_) => Ok(()),
        Created::Conflict => Err(AdminError::OwnerExists),
    }
}

/// Creates an API token for a person and returns it; it is not stored in the clear.
pub fn create_token(data_dir: &Path, user: &str, token_name: &str) -> Result<String, AdminError> {
    accounts::valid_name(token_name).map_err(AdminError::Invalid)?;
    let db = open(data_dir)?;
    let row = db
        .user_by_name(user)?
        .ok_or_else(|| AdminError::NoSuchUser(user.to_owned()))?;
    let token = accounts::new_api_token();
    db.create_token(row.user.id, token_name, &accounts::secret_hash(&token))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_then_token_and_no_second_owner() {
        let dir = tempfile::tempdir().unwrap();
        create_owner(dir.path(), "ana", "a long password").unwrap();
        assert!(matches!(
            create_owner(dir.path(), "bob", "a long password"),
            Err(AdminError::OwnerExists)
        ));
        assert!(matches!(
            create_token(dir.path(), "nobody", "ci"),
            Err(AdminError::NoSuchUser(_))
        ));
        let token = create_token(dir.path(), "ANA", "ci").unwrap();
        let db = Db::open(&dir.path().join("hearth.db")).unwrap();
        let (user, _) = db
            .token_user(&accounts::secret_hash(&token), 1)
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "ana");
        assert!(matches!(
            create_owner(dir.path(), "x", "short"),
            Err(AdminError::Invalid(_))
        ));
    }
}
