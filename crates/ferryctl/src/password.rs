//! Reading passwords: from a file, an environment variable, or an interactive prompt without echo. Never from a
//! flag value (shell history, `ps`).
//!
//! Owns obtaining the secret; it must not print it.

use std::io::IsTerminal;

use crate::cli::PasswordSource;
use crate::CtlError;

/// The password from `source`; prompts when neither a file nor a variable is given and `required` is set and
/// stdin is a terminal. Returns an empty string when not required and not given (UpdateTask keeps the stored one).
pub fn read(source: &PasswordSource, what: &str, required: bool) -> Result<String, CtlError> {
    if let Some(path) = &source.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CtlError::Usage(format!("cannot read password file {}: {e}", path.display()))
        })?;
        let password = text.lines().next().unwrap_or("").to_owned();
        if password.is_empty() {
            return Err(CtlError::Usage(format!(
                "password file {} is empty",
                path.display()
            )));
        }
        return Ok(password);
    }
    if let Some(var) = &source.password_env {
        let password = std::env::var(var)
            .map_err(|_| CtlError::Usage(format!("environment variable {var} is not set")))?;
        if password.is_empty() {
            return Err(CtlError::Usage(format!(
                "environment variable {var} is empty"
            )));
        }
        return Ok(password);
    }
    if !required {
        return Ok(String::new());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::Usage(format!(
            "the {what} password is required: pass --password-file FILE or --password-env VAR"
        )));
    }
    rpassword::prompt_password(format!("{what} password: "))
        .map_err(|e| CtlError::Usage(format!("cannot read the password: {e}")))
}
