"""Common given names and surnames across languages, for redacting person names from
the request log. A list, not a model: it runs offline in microseconds, and a name it
does not know is still caught by its context ("my name is", "Dr.", "Dear") or by a
known given name or surname beside it (see guardrails.redact)."""

GIVEN_NAMES = frozenset("""
aaron abdul abigail adam adrian ahmed aisha alan albert alejandro alex alexander alexandra alexis ali alice alicia
alison amanda amber amelia amir amit amy ana anastasia andrea andreas andrew andrzej angela angelo anil anita ann
anna anne annika anthony antoine antonio anya arjun arthur ashley aylin barbara beatriz ben benjamin bernard beth
bianca bogdan brandon brenda brian bruno bryan camila carl carla carlos carmen carol caroline catherine cecilia
charles charlotte chen cheng chloe chris christian christina christine christopher claire clara claudia colin
connor cristina cynthia dana daniel daniela danielle darius david deborah debra denise dennis derek diana diego
dimitri dmitri dominic donald donna dorothy douglas dylan edward elena eleanor elif elizabeth ella ellen emily emma
emmanuel enrique eric erik erin ethan eva evelyn fatima felipe felix fernando florian francesca francesco francis
frank gabriel gabriela gary george gerald giovanni giulia gloria gonzalo gregory hana hannah hans harold harper
harry hassan heather heinrich helen helena henry hiroshi hugo ian ibrahim igor ingrid irina isabel isabella ivan
jack jacob jacqueline james jan jane janet janice jason javier jean jeffrey jennifer jeremy jerry jessica jiang
joan joanna joao joe johan johann john jonathan jorge jose joseph joshua joyce juan judith julia julian julie
jun justin karen karim karl kate katherine kathleen kathryn keith kelly kenji kenneth kevin kimberly klaus kyle
lars laura lauren lawrence leila lena leo leon li liam lily linda lisa logan lorenzo louis lucas lucia luis luka
lukas madison magdalena maria mariana marie marina mario marta martin mary mateo matteo matthew maximilian mehmet
melissa mia michael michelle miguel mikhail ming mohammed muhammad nancy natalia natalie nathan nicholas nicole
nikolai nina noah olga olivia omar oscar pablo pamela patricia patrick paul paula pedro peter philip pierre pietro
piotr priya rachel rafael rahul raj rajesh ramon raymond rebecca richard robert roberto rohan ronald rosa ruth ryan
samantha samir samuel sandra sara sarah scott sean sebastian sergei sergio sharon shirley sofia sophia sophie
stefan stephanie stephen steven susan svetlana takeshi tamara tatiana teresa thomas timothy tomas tyler valentina
valeria vanessa vera veronica victoria vikram vincent virginia walter wei william xavier xin yan yasmin yuki yuri
yusuf zachary zhang zoe
""".split())

SURNAMES = frozenset("""
abbott adams ahmed ali allen alvarez anderson andersson bailey baker banerjee becker bell bennett bernard bianchi
brown bruno campbell carter castillo chavez chen clark collins cook cooper costa cruz davies davis diaz dubois
edwards evans fernandez ferrari fischer fisher flores garcia gomez gonzalez gray green gupta hall harris hernandez
hill hoffmann huang hughes ivanov jackson james jensen johansson johnson jones kaur khan kim king klein koch kowalski
kumar lambert lee lewis li lin liu lopez martin martinez meyer miller mitchell moore morales moreau morgan muller
murphy nakamura nelson nguyen nielsen novak olsen ortiz parker patel perez petrov phillips popescu ramirez reddy
reyes richard richardson rivera roberts robinson rodriguez romero rossi russo sanchez santos sato schmidt schneider
schulz scott sharma shah silva singh smith suzuki takahashi tanaka taylor thomas thompson torres turner walker wang
watanabe weber white williams wilson wong wright wu yamamoto yang young zhang zhao zhou
""".split())
