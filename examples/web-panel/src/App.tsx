import { useEffect, useMemo, useState } from "react";
import { apiBaseUrl, createClient } from "./clawplane";
import { MyOpenClaw } from "./MyOpenClaw";
import { describeUser, hasToken, onSessionChange, signOut } from "./session";
import { SignIn } from "./SignIn";

export function App() {
  const [session, setSession] = useState(0);
  useEffect(() => onSessionChange(() => setSession((n) => n + 1)), []);
  const apiUrl = useMemo(apiBaseUrl, []);
  const client = useMemo(() => createClient(apiUrl), [apiUrl]);
  const signedIn = hasToken();
  const user = signedIn ? describeUser() : null;

  return (
    <main className="page">
      <header className="topbar">
        <h1>My OpenClaw</h1>
        {signedIn && (
          <div className="who">
            {user !== null && <span data-testid="signed-in-as">{user}</span>}
            <button type="button" className="link" onClick={signOut} data-testid="sign-out">
              Sign out
            </button>
          </div>
        )}
      </header>
      {/* A new token starts the section afresh. */}
      {signedIn ? <MyOpenClaw key={session} client={client} apiUrl={apiUrl} /> : <SignIn />}
      <footer className="footer">
        API: <code data-testid="api-url">{apiUrl}</code>
      </footer>
    </main>
  );
}
