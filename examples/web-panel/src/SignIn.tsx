import { useState, type FormEvent } from "react";
import { setToken } from "./session";

/**
 * Stands in for your product's sign-in: paste the user's SSO token (a JWT).
 * In your app the token comes from the SSO session and this form does not exist.
 */
export function SignIn() {
  const [value, setValue] = useState("");
  const submit = (event: FormEvent) => {
    event.preventDefault();
    if (value.trim() !== "") setToken(value);
  };
  return (
    <section className="card" data-testid="sign-in">
      <h2>Sign in</h2>
      <p>
        Paste your SSO token (a JWT your control plane accepts). In your product this token comes from the
        user's SSO session; you can also open this page with <code>?token=&lt;jwt&gt;</code>.
      </p>
      <form onSubmit={submit}>
        <textarea
          data-testid="token-input"
          aria-label="SSO token"
          rows={4}
          value={value}
          onChange={(event) => setValue(event.target.value)}
          placeholder="eyJhbGciOi..."
          spellCheck={false}
        />
        <button type="submit" className="primary" data-testid="token-submit" disabled={value.trim() === ""}>
          Continue
        </button>
      </form>
    </section>
  );
}
