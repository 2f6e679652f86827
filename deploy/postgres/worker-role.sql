-- The workers' PostgreSQL role: only the rows they read and write, and no DDL (least privilege).
--
-- Run it as the tables' owner (the role `python cli.py init-db` runs as: migrations stay with the owner), on
-- the service's database, after the migrations, and again after an upgrade whose migration adds a table:
--
--   psql "postgresql://OWNER@HOST:5432/NAME?sslmode=verify-full&sslrootcert=CA.pem" \
--        -v worker_password="$WORKER_PASSWORD" -f deploy/postgres/worker-role.sql
--
-- Add `-v worker_role=NAME` for a role name other than agent_worker. Then give the workers
-- DATABASE_URL=postgresql://agent_worker:PASSWORD@HOST:5432/NAME?sslmode=verify-full&sslrootcert=CA.pem.
-- Running it again is safe: it creates the role once, then sets its password and its grants afresh.
-- Proven by tests/integration/test_tls_and_worker_role.py (a worker runs tasks end to end under this role;
-- the role can change no table).

\set ON_ERROR_STOP on
\if :{?worker_role}
\else
\set worker_role agent_worker
\endif

SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'worker_role') AS role_is_new \gset
\if :role_is_new
CREATE ROLE :"worker_role" LOGIN;
\endif
ALTER ROLE :"worker_role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'worker_password';

GRANT CONNECT ON DATABASE :"DBNAME" TO :"worker_role";
-- USAGE only: PostgreSQL 15 and later give PUBLIC no CREATE on the public schema. On an older server, run
-- once `REVOKE CREATE ON SCHEMA public FROM PUBLIC;` or the role could still create tables there.
GRANT USAGE ON SCHEMA public TO :"worker_role";

-- From nothing, so that a grant removed from this file is removed from the role too.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"worker_role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM :"worker_role";

-- What the worker does with each table (the sweeper and the approvals' expiry run in it too); nothing on
-- alembic_version, and DELETE on none: a worker never removes a row.
GRANT SELECT ON agents, limit_overrides TO :"worker_role";          -- read: the agent, the limits' overrides
GRANT SELECT, UPDATE ON tasks TO :"worker_role";                    -- claim, settle, requeue, dispatch
GRANT SELECT, INSERT ON task_attempts TO :"worker_role";            -- one row per attempt
GRANT SELECT, INSERT, UPDATE ON task_steps TO :"worker_role";       -- an api task's turns and tool calls
GRANT SELECT, UPDATE ON task_groups TO :"worker_role";              -- a group's end, its callback sent
GRANT SELECT, INSERT, UPDATE, DELETE ON worker_leases TO :"worker_role";  -- its own lease; leases long expired
-- Nothing on the HTTP API's keys: the API process reads them (as the owner), never a worker.
REVOKE ALL ON api_keys FROM :"worker_role";
GRANT USAGE ON SEQUENCE task_attempts_id_seq, task_steps_id_seq TO :"worker_role";
