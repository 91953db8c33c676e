-- Run once, when the database is created, after init-config.sh.
CREATE TABLE users (
    userid varchar(255) PRIMARY KEY,
    name varchar(255) NOT NULL,
    address varchar(255) NOT NULL,
    credits numeric NOT NULL,
    version numeric NOT NULL
);

-- idempotency/update: one row per invocation that added credits (deleted after a day)
CREATE TABLE user_idempotency (
    id varchar(255) PRIMARY KEY
);

INSERT INTO users (userid, name, address, credits, version) VALUES
    ('A', 'Don', '1600 Pennsylvania Avenue NW, Washington, DC 20500, USA', 1000, 0),
    ('B', 'Keir', '10 Downing St, London SW1A 2AB, UK', 1000, 0);
